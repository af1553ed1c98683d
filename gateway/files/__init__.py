"""OpenAI's Files API, kept in PostgreSQL: the store (store.py), the streamed multipart upload (upload.py,
multipart.py). The routes are gateway/routes/files.py."""
