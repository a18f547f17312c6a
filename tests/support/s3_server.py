"""A real S3-API server for the tests: moto in server mode on 127.0.0.1 (a free port), with a fresh bucket, and
fsspec's s3 filesystem pointed at it (s3fs, the backend users install for ``s3://`` stores)."""

from __future__ import annotations

import contextlib
import os
import uuid


@contextlib.contextmanager
def s3_bucket():
    """Start moto's S3 server, create a bucket, yield ``s3://<bucket>``; fsspec's s3 options point at it."""
    import fsspec
    import s3fs
    from moto.server import ThreadedMotoServer

    from services.gateway.ray_local import free_port

    port = free_port()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved_env = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    saved_conf = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"synthrad-{uuid.uuid4().hex[:10]}"
    try:
        s3fs.S3FileSystem().mkdir(bucket)
        yield f"s3://{bucket}"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
