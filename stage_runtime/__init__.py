"""What every stage process runs besides its own module and stages/common.py: the MLflow
record of the stage run (tracking), its tag scheme (record), the stores it writes to
(sqlite_store, http_store, sqlite_client) and the model folder (pyfunc_folder), and the file
locks (locks).

Every stage of dvc.yaml declares this folder as one dependency (DVC hashes it as a whole;
.dvcignore leaves __pycache__ out), so the folder holds exactly these modules: anything added
here makes every stage stale when it changes. tests/test_dvc_yaml.py holds each stage to it.
"""
