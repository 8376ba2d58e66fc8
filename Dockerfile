# The imgsearch command line in an image, and its HTTP service: built from the wheel with the [serve] extra, so it
# carries its migrations and SQL.
#   docker build -t imgsearch .
#   docker run --rm -e IMGSEARCH_DATABASE_URL=postgresql://... -v /srv/models:/models:ro imgsearch db upgrade
# The service: --host 0.0.0.0 inside the container (its own network namespace), published on the host's
# loopback only; put the reverse proxy that terminates TLS in front of it (docs/operations.md).
#   docker run -d --name imgsearch -p 127.0.0.1:8000:8000 -e IMGSEARCH_DATABASE_URL=postgresql://reader@... \
#       -v /srv/models:/models:ro imgsearch serve --host 0.0.0.0
# The HEALTHCHECK asks GET /livez on port 8000 (keep --port at its default), with Python's standard library: the
# slim image has no curl. Readiness, for a load balancer or an orchestrator, is GET /readyz.
# The VGG16 weights are not in the image: mount them and point IMGSEARCH_VGG16_WEIGHTS at the file.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY imgsearch ./imgsearch
COPY migrations ./migrations
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
# The wheel's path with the extra appended ("...whl[serve]"): FastAPI, uvicorn and python-multipart come too.
RUN wheel="$(ls /wheels/imgsearch-*.whl)" \
    && pip install --no-cache-dir "${wheel}[serve]" && rm -rf /wheels \
    && useradd --create-home --uid 10001 imgsearch
USER imgsearch
ENV IMGSEARCH_VGG16_WEIGHTS=/models/vgg16_imagenet_notop.h5
EXPOSE 8000
# Loading the model takes a while before the port opens: failures during the start period do not count. A
# container running a one-off command (db upgrade, ingest) ends before the first check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=3)"]
ENTRYPOINT ["imgsearch"]
CMD ["--help"]
