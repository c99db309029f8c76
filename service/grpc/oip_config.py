"""What the Open Inference Protocol says about a model: metadata, Triton-style config, statistics.

Built from a ServedModel; nothing here runs inference.
"""

from __future__ import annotations

from imgclf._generated.inference import grpc_service_pb2 as pb
from imgclf._generated.inference import model_config_pb2 as mc
from imgclf.grpc.oip_tensors import (
    CAM_BOX_OUTPUT,
    CAM_INDEX_OUTPUT,
    CAM_OUTPUT,
    IMAGE_INPUT,
    PROBABILITIES_OUTPUT,
)
from imgclf.metrics.statistics import Duration, ModelStats
from imgclf.models.loader import ServedModel

PLATFORM = "onnxruntime_onnx"
LABELS_FILE = "labels.txt"


def output_names(model: ServedModel) -> list[str]:
    """The model's own output, plus `probabilities` when the model outputs logits."""
    names = [model.engine.info.output_name]
    if model.metadata.output == "logits" and names[0] != PROBABILITIES_OUTPUT:
        names.append(PROBABILITIES_OUTPUT)
    return names


def model_metadata(model: ServedModel, versions: list[int]) -> pb.ModelMetadataResponse:
    T = pb.ModelMetadataResponse.TensorMetadata
    if model.config.image_input:
        inputs = [T(name=IMAGE_INPUT, datatype="BYTES", shape=[-1, 1])]
    else:
        datatype = "UINT8" if model.metadata.pixel_input else "FP32"
        inputs = [T(name=model.engine.info.input_name, datatype=datatype,
                    shape=[-1, *model.sample_shape])]  # fmt: skip
    outputs = [
        T(name=n, datatype="FP32", shape=[-1, model.num_classes]) for n in output_names(model)
    ]
    if model.explaining.head is not None:  # class activation maps, on request only
        outputs += [
            T(name=CAM_OUTPUT, datatype="FP32", shape=[-1, -1, -1, -1]),
            T(name=CAM_INDEX_OUTPUT, datatype="INT32", shape=[-1, -1]),
            T(name=CAM_BOX_OUTPUT, datatype="FP32", shape=[-1, 4]),
        ]
    return pb.ModelMetadataResponse(
        name=model.name,
        versions=[str(v) for v in sorted(versions, reverse=True)],
        platform=PLATFORM,
        inputs=inputs,
        outputs=outputs,
    )


def _version_policy(model: ServedModel) -> mc.ModelVersionPolicy:
    policy = model.config.version_policy
    if policy.all:
        return mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())
    if policy.specific is not None:
        return mc.ModelVersionPolicy(
            specific=mc.ModelVersionPolicy.Specific(versions=policy.specific)
        )
    return mc.ModelVersionPolicy(
        latest=mc.ModelVersionPolicy.Latest(num_versions=policy.latest or 1)
    )


def max_request_batch(model: ServedModel, max_request_images: int) -> int:
    """The largest batch one Open Inference request may carry: the model's max batch size
    (as in Triton, where a request is never split), within --max-images-per-request."""
    return min(model.max_batch_size, max_request_images)


def model_config(model: ServedModel, max_request_images: int) -> mc.ModelConfig:
    """A Triton-style config (perf_analyzer and Triton's image_client read it).

    `max_batch_size` is the largest batch a request may carry (`max_request_batch`): larger
    ones are refused, as Triton refuses them, and clients size their batches by it."""
    cfg = model.config
    if cfg.image_input:
        inputs = [mc.ModelInput(name=IMAGE_INPUT, data_type=mc.TYPE_STRING, dims=[1])]
    else:
        inputs = [
            mc.ModelInput(
                name=model.engine.info.input_name,
                data_type=mc.TYPE_UINT8 if model.metadata.pixel_input else mc.TYPE_FP32,
                format=mc.ModelInput.FORMAT_NHWC
                if model.metadata.pixel_input
                else mc.ModelInput.FORMAT_NCHW,
                dims=list(model.sample_shape),
            )
        ]
    outputs = [
        mc.ModelOutput(name=n, data_type=mc.TYPE_FP32, dims=[model.num_classes],
                       label_filename=LABELS_FILE)
        for n in output_names(model)
    ]  # fmt: skip
    provider = model.engine.info.provider
    on_cpu = provider.startswith("CPU")
    kind = mc.ModelInstanceGroup.KIND_CPU if on_cpu else mc.ModelInstanceGroup.KIND_GPU
    batcher = model.batcher
    timeout_us = int((model.default_timeout_s or 0) * 1e6)
    return mc.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend="onnxruntime",
        version_policy=_version_policy(model),
        max_batch_size=max_request_batch(model, max_request_images),
        input=inputs,
        output=outputs,
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=sorted(batcher.preferred_batch_sizes),
            max_queue_delay_microseconds=int(batcher.max_delay_s * 1e6),
            priority_levels=batcher.priority_levels if batcher.priority_levels > 1 else 0,
            default_priority_level=(
                batcher.default_priority_level if batcher.priority_levels > 1 else 0
            ),
            default_queue_policy=mc.ModelQueuePolicy(
                default_timeout_microseconds=timeout_us,
                allow_timeout_override=True,
                max_queue_size=batcher.max_queue_size,
            ),
        ),
        instance_group=[
            mc.ModelInstanceGroup(
                name=f"{model.name}_0",
                kind=kind,
                count=batcher.instances,
                gpus=[] if on_cpu else model.config.gpus,
            )
        ],
        optimization=mc.ModelOptimizationPolicy(
            cuda=mc.ModelOptimizationPolicy.Cuda(graphs=model.engine.info.cuda_graphs)
        ),
        default_model_filename=model.served_file,
        parameters={
            "provider": mc.ModelParameter(string_value=provider),
            "precision": mc.ModelParameter(string_value=model.precision),
            "explain": mc.ModelParameter(
                string_value="true" if model.explaining.head is not None else "false"
            ),
            **{
                k: mc.ModelParameter(string_value=str(v))
                for k, v in model.metadata.provenance.items()
            },
        },
    )


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def model_statistics(model: ServedModel) -> pb.ModelStatistics:
    s: ModelStats = model.stats
    return pb.ModelStatistics(
        name=model.name,
        version=str(model.version),
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success),
            fail=_duration(s.fail),
            queue=_duration(s.queue),
            compute_input=_duration(s.compute_input),
            compute_infer=_duration(s.compute_infer),
            compute_output=_duration(s.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(b.compute_input),
                compute_infer=_duration(b.compute_infer),
                compute_output=_duration(b.compute_output),
            )
            for size, b in sorted(s.batches.items())
        ],
    )
