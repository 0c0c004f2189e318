# The image the flow's remote steps run in (Kubernetes, AWS Batch, Argo, Step Functions):
#   docker build -t <registry>/movierec:<tag> . && docker push <registry>/movierec:<tag>
# and name it in the flow's configuration file, which every remote step takes its image from:
#   deploy:
#     image: <registry>/movierec:<tag>
# Python and the flow's runtime lock, every package pinned with its hashes (requirements/runtime.txt,
# made by `make lock`; torch is its CPU build, from PyTorch's index). movierec itself is not installed:
# it travels in Metaflow's code package with the flow (flows/movierec links it), so an image serves
# every commit whose lock is the same.
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/runtime.txt /tmp/runtime.txt
RUN python -m pip install --require-hashes --extra-index-url https://download.pytorch.org/whl/cpu \
        -r /tmp/runtime.txt \
    && rm /tmp/runtime.txt
WORKDIR /metaflow
