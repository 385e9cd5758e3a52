"""`sdcpu serve`: a web page, a JSON API and an A1111-compatible subset over one loaded model, in the
optional `serve` extra (FastAPI and uvicorn). Jobs run one at a time from a bounded queue (jobs.py);
limits.py and security.py hold every check made before a request allocates anything."""
