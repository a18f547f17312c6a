"""End to end over gRPC through Serve's gRPC proxy (slow; same Ray instance as the REST tests)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from services.gateway.stubs import (batch_pb2, batch_pb2_grpc, common_pb2, generator_pb2, generator_pb2_grpc,
                                     metrics_pb2, metrics_pb2_grpc)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def channel(served):
    with grpc.insecure_channel(served.grpc_target) as ch:
        yield ch


def test_list_generate_stream(channel, served):
    gen = generator_pb2_grpc.GeneratorServiceStub(channel)
    ids = [m.model_id for m in gen.ListModels(generator_pb2.ListModelsRequest()).models]
    assert {"tiny", "tiny-fail"} <= set(ids)
    cond = common_pb2.Condition(enlarged_cardiac_silhouette=common_pb2.FINDING_STATE_PRESENT)
    resp = gen.Generate(generator_pb2.GenerateRequest(model_id="tiny", condition=cond, count=2, seed=9,
                                                      encoding=common_pb2.IMAGE_ENCODING_FLOAT32))
    assert [im.seed for im in resp.images] == [9, 10]
    imgs = list(gen.StreamGenerate(generator_pb2.GenerateRequest(model_id="tiny", condition=cond, count=50, seed=9,
                                                                 encoding=common_pb2.IMAGE_ENCODING_FLOAT32)))
    assert [m.index for m in imgs] == list(range(50))
    a = np.frombuffer(resp.images[1].data, "<f4")
    b = np.frombuffer(imgs[1].data, "<f4")
    np.testing.assert_array_equal(a, b)  # same seed, same pixels, whatever the batch
    assert gen.Ready(generator_pb2.ReadyRequest()).ready


def test_invalid_arguments(channel):
    gen = generator_pb2_grpc.GeneratorServiceStub(channel)
    with pytest.raises(grpc.RpcError) as ei:
        gen.Generate(generator_pb2.GenerateRequest(model_id="nope", count=1))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nope" in ei.value.details()
    cond = common_pb2.Condition()
    cond.by_name["pneumothorax"] = common_pb2.FINDING_STATE_PRESENT
    with pytest.raises(grpc.RpcError) as ei:
        gen.Generate(generator_pb2.GenerateRequest(model_id="tiny", count=1, condition=cond))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pneumothorax" in ei.value.details()
    batches = batch_pb2_grpc.BatchServiceStub(channel)
    with pytest.raises(grpc.RpcError) as ei:
        batches.GetBatch(batch_pb2.GetBatchRequest(batch_id="../../etc/passwd"))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_batch_job_watch_and_stream_back(channel):
    batches = batch_pb2_grpc.BatchServiceStub(channel)
    job = batches.CreateBatch(batch_pb2.CreateBatchRequest(model_id="tiny", count=24, seed=5,
                                                           format=batch_pb2.BATCH_FORMAT_DICOM))
    updates = list(batches.WatchJob(common_pb2.GetJobRequest(job_id=job.job_id)))
    assert updates[-1].state == common_pb2.JOB_STATE_SUCCEEDED and updates[-1].done == 24
    bid = updates[-1].batch_id
    assert batches.GetBatch(batch_pb2.GetBatchRequest(batch_id=bid)).format == "dicom"
    back = list(batches.StreamBatchImages(batch_pb2.StreamBatchImagesRequest(batch_id=bid)))
    assert len(back) == 24 and back[0].seed == 5
    failed = batches.CreateBatch(batch_pb2.CreateBatchRequest(model_id="tiny-fail", count=30, seed=0))
    final = list(batches.WatchJob(common_pb2.GetJobRequest(job_id=failed.job_id)))[-1]
    assert final.state == common_pb2.JOB_STATE_FAILED and "seed 13" in final.error
    refs = metrics_pb2_grpc.MetricsServiceStub(channel).ListReferences(metrics_pb2.ListReferencesRequest())
    assert isinstance(list(refs.references), list)
    assert batches.DeleteBatch(batch_pb2.GetBatchRequest(batch_id=bid)).deleted
