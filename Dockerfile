# syntax=docker/dockerfile:1
# Two stages: dependencies are installed into a virtualenv in `build`; the runtime image
# gets only that virtualenv (no compilers, no pip cache) and runs as a non-root user.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# The CPU build of torch; point this at a mirror or a GPU index to change it.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY training ./training
COPY index ./index
COPY service ./service
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" .

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --create-home --uid 10001 app \
 && mkdir -p /artifacts /home/app/.cache/towerrec \
 && chown -R app:app /artifacts /home/app/.cache
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ARTIFACTS_DIR=/artifacts/current
USER app
WORKDIR /home/app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["python", "-m", "service", "serve", "--host", "0.0.0.0", "--port", "8000"]
