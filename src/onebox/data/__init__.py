"""Dataset library: read user files, validate them against a schema, clean, split and store.

Pure functions over plain values: no database, CLI or HTTP here, so services, jobs and tests
can all call it. The pipeline entry point is :func:`onebox.data.importer.prepare`.
"""
