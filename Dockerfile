# syntax=docker/dockerfile:1
# One image for every Arbiter process: each service's web server, relay and consumers, the training operator,
# the migration Job and the trainer Jobs. ARBITER_SERVICES (or `serve --services`) picks what a container is.
#
#   docker build -t arbiter .                      # CPU build (torch from the PyTorch CPU index)
#   docker build -t arbiter-gpu \
#     --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
#                                                  # GPU build for trainer Jobs: PyPI's Linux torch wheel bundles
#                                                  # CUDA; a download.pytorch.org/whl/cuXYZ index that carries
#                                                  # torch 2.13.0 pins another CUDA version. Set the chart's
#                                                  # training.trainer.image to it.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# torch first and exactly: resolved through the requirements below it would be PyPI's CUDA build, gigabytes
# larger. Its own layer, so a lock change does not download it again.
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"

# The pinned dependencies before the source, so editing code reuses this layer.
COPY requirements.lock /tmp/requirements.lock
RUN pip install -r /tmp/requirements.lock && rm /tmp/requirements.lock

# A regular (not editable) install: the packages and their templates, static files and schemas land in
# site-packages, and the source is not kept in the image.
COPY pyproject.toml /tmp/src/
COPY libs /tmp/src/libs
COPY services /tmp/src/services
RUN pip install --no-deps /tmp/src && rm -rf /tmp/src && pip check

ENV ARBITER_ENV=production \
    ARBITER_HOME=/var/lib/arbiter \
    ARBITER_STATIC_ROOT=/opt/arbiter/static \
    ARBITER_BIND=0.0.0.0:8000 \
    HOME=/var/lib/arbiter

# Static files are collected once, at build time, for every service; whitenoise serves them. Settings need a
# secret key in production: this one exists only for this command and is not kept in the image.
RUN ARBITER_SECRET_KEY=collectstatic-only ARBITER_SERVICES=all ARBITER_HOME=/tmp/arbiter-build \
    arbiter collectstatic --noinput --verbosity 0 && rm -rf /tmp/arbiter-build

RUN groupadd --system --gid 10001 arbiter \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/arbiter --shell /usr/sbin/nologin arbiter \
    && mkdir -p /var/lib/arbiter \
    && chown arbiter:arbiter /var/lib/arbiter

USER 10001:10001
WORKDIR /var/lib/arbiter
EXPOSE 8000

ENTRYPOINT ["arbiter"]
CMD ["serve"]
