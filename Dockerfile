# The pipeline image. PyTorch's CUDA wheels carry their own CUDA runtime, so a slim Python
# base runs on GPU hosts too (with the NVIDIA container toolkit: `docker run --gpus all`).
# Label Studio runs as a second service: see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    YOLO_OFFLINE=1 \
    PSEUDOLABEL_LS_BIN=/opt/label-studio/bin/label-studio

RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY pseudolabel ./pseudolabel
COPY loops ./loops
COPY configs ./configs
# torch/torchvision first: the pinned pair (see pyproject.toml).
RUN pip install "torch==2.14.1" "torchvision==0.29.1" && pip install .

# The Label Studio server in its own venv, for `pseudolabel demo` inside the container
# (production uses the label-studio service of docker-compose.yml instead).
ARG WITH_LABEL_STUDIO=1
RUN if [ "$WITH_LABEL_STUDIO" = 1 ]; then \
      python -m venv /opt/label-studio && /opt/label-studio/bin/pip install "label-studio==1.23.2"; \
    fi

RUN useradd --create-home --uid 1000 pseudolabel
USER pseudolabel
VOLUME ["/data"]
ENTRYPOINT ["pseudolabel"]
CMD ["--help"]
