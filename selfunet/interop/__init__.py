"""Interoperability with nnU-Net v2 trained models, in both directions (docs/guide/interoperability.md).

Takes in an nnU-Net v2 trainer folder (``plans.json``, ``dataset.json``, ``dataset_fingerprint.json``,
``fold_*/checkpoint_final.pth``), a dataset results folder or an ``nnUNetv2_export_model_to_zip``
zip, and gives out an ordinary selfunet model archive (:mod:`selfunet.interop.nnunet_import`);
takes in a work directory or model archive and gives out a trainer folder that nnU-Net predicts
with (:mod:`selfunet.interop.nnunet_export`).

nnunetv2 is never imported: its JSON files are parsed, its checkpoints are loaded with
``torch.load(weights_only=True)`` and its ``postprocessing.pkl`` with an unpickler that builds
nothing but plain values (:mod:`selfunet.interop.nnunet_files`). Like :mod:`selfunet.model_archive`,
this package sits above every pipeline stage: it maps plans (:mod:`selfunet.interop.nnunet_plans`)
and network weights (:mod:`selfunet.interop.nnunet_network`) onto ours and writes archives
through :mod:`selfunet.model_archive`'s public functions.
"""
