"""Server-side persistence: projects, uploads, runs and results in SQLite; encodings in files."""
