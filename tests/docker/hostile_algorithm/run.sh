#!/bin/sh
# What a participant who wants to win without segmenting could write to /output:
#   symlink   the label map as a symbolic link to HOSTILE_TARGET, the host path of a reference
#             label (dangling in here; a host that follows it reads the reference: Dice 1.0)
#   external  a MetaImage header (baked in at build time: output.mha) whose ElementDataFile names
#             a raw file on the host holding the reference's voxels
#   slug      built with an input-socket label that climbs out of the harness's folders; it never
#             runs (the harness refuses the slug first), so it writes nothing
set -eu
out=/output/images/segmentation
mkdir -p "$out"
case "$HOSTILE_MODE" in
  symlink) ln -s "$HOSTILE_TARGET" "$out/output.nii.gz" ;;
  external) cp /opt/hostile/output.mha "$out/output.mha" ;;
  *) echo "unknown mode $HOSTILE_MODE" >&2; exit 3 ;;
esac
