# syntax=docker/dockerfile:1.7
#
# imgclf images, built from the repository root (see docs/deploy.md):
#
#   docker build -t imgclf:latest .                               # serving image (default target)
#   docker build --target train -t imgclf-train:latest .          # training image (torch)
#
# Serving base: onnxruntime-gpu 1.31 from PyPI is linked against CUDA 13 and cuDNN 9
# (libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libcudnn.so.9), so the
# serving image starts from NVIDIA's CUDA 13 + cuDNN 9 *runtime* image; the host needs an NVIDIA
# driver of branch R580 or newer. Without a GPU the same image serves on the CPU (provider auto).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
# Training base: PyPI's torch wheels carry their own CUDA libraries, so a plain Python image does.
ARG TRAIN_IMAGE=python:3.12-slim-bookworm
ARG UID=10001

# ---- Python (3.12, Ubuntu 24.04's) on the CUDA runtime, and the unprivileged user ---------------
FROM ${CUDA_IMAGE} AS cuda-python
ARG UID
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid "${UID}" imgclf \
    && useradd --uid "${UID}" --gid "${UID}" --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin imgclf

# ---- the serving install into a virtual environment: `pip install .`, no torch -----------------
# One import name, imgclf, over service/ and training/ (pyproject.toml maps both): training's
# modules are installed but never imported by the server, and torch is not installed.
FROM cuda-python AS serve-build
WORKDIR /src
RUN python3 -m venv /opt/imgclf
COPY pyproject.toml README.md ./
COPY service/ service/
COPY training/ training/
RUN /opt/imgclf/bin/pip install --no-cache-dir . \
    && /opt/imgclf/bin/python -c "import importlib.util as u; assert u.find_spec('torch') is None"

# ---- serving image ---------------------------------------------------------------------------
FROM cuda-python AS serve
COPY --from=serve-build /opt/imgclf /opt/imgclf
# The bundled model repository; mount another one over /models (or set IMGCLF_MODEL_REPOSITORY).
COPY models/ /models/
# Every setting is an IMGCLF_* variable (README: Configuration); these suit a container.
ENV PATH=/opt/imgclf/bin:${PATH} \
    IMGCLF_HOST=0.0.0.0 \
    IMGCLF_HTTP_PORT=8000 \
    IMGCLF_GRPC_PORT=8001 \
    IMGCLF_METRICS_PORT=8002 \
    IMGCLF_MODEL_REPOSITORY=/models \
    IMGCLF_PRE_DRAIN_DELAY_S=0 \
    IMGCLF_GRACE_PERIOD_S=30
USER ${UID}:${UID}
WORKDIR /tmp
EXPOSE 8000 8001 8002
# gRPC health of the whole server: SERVING once every model has loaded and warmed up,
# NOT_SERVING from the first moment of a drain.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/bin/sh", "-c", "exec imgclf health --server 127.0.0.1:${IMGCLF_GRPC_PORT} --timeout 4"]
# SIGTERM drains (pre-drain delay, then up to IMGCLF_GRACE_PERIOD_S) and exits 0: give the
# container at least IMGCLF_PRE_DRAIN_DELAY_S + IMGCLF_GRACE_PERIOD_S + a few seconds to stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["imgclf", "serve"]

# ---- training image: `pip install '.[train]'` (torch), for the offline job ----------------------
# Writes checkpoints under /work/runs and exports into a mounted model repository at /models:
#   docker run --rm -v "$PWD/models:/models" imgclf-train:latest train --dataset digits ...
FROM ${TRAIN_IMAGE} AS train
ARG UID
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/imgclf/bin:${PATH} \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MPLCONFIGDIR=/tmp/matplotlib
RUN groupadd --gid "${UID}" imgclf \
    && useradd --uid "${UID}" --gid "${UID}" --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin imgclf \
    && mkdir -p /models /work \
    && chown "${UID}:${UID}" /models /work
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY training/ training/
# For a CPU-only torch: --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_EXTRA_INDEX_URL=
RUN python -m venv /opt/imgclf \
    && /opt/imgclf/bin/pip install --no-cache-dir '.[train]'
USER ${UID}:${UID}
WORKDIR /work
VOLUME ["/models"]
ENTRYPOINT ["imgclf"]
CMD ["train", "--help"]
