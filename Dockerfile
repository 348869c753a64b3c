FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
RUN useradd --create-home studio && mkdir -p /data && chown studio /data
USER studio
EXPOSE 8000
CMD ["python", "-m", "webapp.server", "--host", "0.0.0.0", "--port", "8000"]
