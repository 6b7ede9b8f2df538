# selfunet: the project image. One image runs every pipeline stage (`selfunet <stage> ...`), the
# harness's Docker sandbox jobs and the grand-challenge algorithm container built on top of it.
#
# Build with `harness image build` (Docker Engine API; tags selfunet:<version>-<git revision>),
# or by hand:
#   docker build -t selfunet:dev .                                     # GPU: CUDA PyTorch base
#   docker build --network none --build-arg BASE_IMAGE=selfunet-base:bookworm -t selfunet:dev .
#
# No network is needed (or used) during the build: every Python package comes from a wheelhouse
# in the build context (WHEELHOUSE, made by `harness image build` with `pip download` on the
# host). On the CUDA base, torch is the base image's own (the venv sees the system site-packages
# and pip finds torch already satisfied); on a bare Python base, the wheelhouse's torch wheel
# (the CPU build on CPU machines) is installed.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# --- stage 1: third-party packages into a virtual environment (the wheels never reach the final
# image; this stage and its copy below stay cached while only selfunet's own sources change)
FROM ${BASE_IMAGE} AS deps
ARG WHEELHOUSE=build/wheelhouse
ARG PYTHON=python3
COPY ${WHEELHOUSE} /tmp/wheels
RUN ${PYTHON} -m venv --system-site-packages /opt/selfunet \
 && /opt/selfunet/bin/python -m pip install --no-cache-dir --no-index --find-links /tmp/wheels \
      --disable-pip-version-check --no-compile /tmp/wheels/*.whl \
 && find /opt/selfunet -name __pycache__ -prune -exec rm -rf {} +

# --- stage 2: the base, the environment, a non-root user, selfunet itself and the entry point
FROM ${BASE_IMAGE}
COPY --from=deps /opt/selfunet /opt/selfunet
# uid 1000 by default; the harness runs jobs as the host user (--user uid:gid) so files it writes
# into bind-mounted folders belong to that user, hence a HOME and caches every uid can write
# (matplotlib's font cache is made here once instead of in every job's container).
RUN (useradd --uid 1000 --create-home --shell /bin/sh selfunet 2>/dev/null \
     || (echo 'selfunet:x:1000:1000::/home/selfunet:/bin/sh' >> /etc/passwd \
         && echo 'selfunet:x:1000:' >> /etc/group && mkdir -p /home/selfunet \
         && chown 1000:1000 /home/selfunet)) \
 && mkdir -p /tmp/selfunet-cache \
 && MPLCONFIGDIR=/tmp/selfunet-cache/matplotlib /opt/selfunet/bin/python -c "import matplotlib.font_manager" \
 && chmod -R a+rwX /tmp/selfunet-cache && chmod 1777 /tmp/selfunet-cache
COPY pyproject.toml README.md /tmp/src/
COPY selfunet /tmp/src/selfunet
COPY harness /tmp/src/harness
RUN /opt/selfunet/bin/python -m pip install --no-cache-dir --no-index --no-deps --no-build-isolation \
      --disable-pip-version-check --no-compile /tmp/src >/dev/null \
 && rm -rf /tmp/src \
 && find /opt/selfunet -name __pycache__ -prune -exec rm -rf {} + \
 && /opt/selfunet/bin/selfunet --help >/dev/null
ENV PATH=/opt/selfunet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/selfunet-cache/matplotlib \
    XDG_CACHE_HOME=/tmp/selfunet-cache \
    LANG=C.UTF-8
USER selfunet
WORKDIR /home/selfunet
ENTRYPOINT ["selfunet"]
CMD ["--help"]
# last, so a new revision does not invalidate the cached layers above
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="selfunet" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.description="self-configuring U-Net for medical image segmentation"
