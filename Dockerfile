# The imgsearch command line in an image: built from the wheel, so it carries its migrations and SQL.
#   docker build -t imgsearch .
#   docker run --rm -e IMGSEARCH_DATABASE_URL=postgresql://... -v /srv/models:/models:ro imgsearch db upgrade
# The VGG16 weights are not in the image: mount them and point IMGSEARCH_VGG16_WEIGHTS at the file.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY imgsearch ./imgsearch
COPY migrations ./migrations
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home --uid 10001 imgsearch
USER imgsearch
ENV IMGSEARCH_VGG16_WEIGHTS=/models/vgg16_imagenet_notop.h5
ENTRYPOINT ["imgsearch"]
CMD ["--help"]
