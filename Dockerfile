# The gateway image used by docker-compose.yml (not built in CI: no Docker engine there).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ncpeh_dicomweb ./ncpeh_dicomweb
RUN pip install --no-cache-dir . && useradd --system ncpeh
USER ncpeh
EXPOSE 8080
ENTRYPOINT ["ncpeh-dicomweb", "serve"]
