"""The encoder client: CSV validation, linkage schemas, clkhash encoding, file formats."""
