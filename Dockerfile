FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY gateway gateway
COPY workers workers
COPY gpu_apps gpu_apps
COPY observability observability
COPY cli cli
RUN pip install --no-cache-dir . \
 && useradd --create-home gatehouse
USER gatehouse
# the data dir exists in the image, so a volume mounted there starts out owned by this user
RUN mkdir -p /home/gatehouse/.gatehouse
EXPOSE 8000
CMD ["gatehouse", "serve", "--host", "0.0.0.0"]
