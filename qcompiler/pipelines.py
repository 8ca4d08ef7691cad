"""The named pipelines: literal, commented lists of passes. Each pipeline is itself a pass."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qcompiler.config import CompileConfig
from qcompiler.pass_infra import Pipeline
from qcompiler.passes.batchnorm_to_affine import BatchNormToAffinePass
from qcompiler.passes.channel_affine_to_conv import ChannelAffineToConvPass
from qcompiler.passes.finalize_integer_model import FinalizeIntegerModelPass
from qcompiler.passes.fold_batchnorm import FoldBatchNormPass
from qcompiler.passes.fold_channel_affine import FoldChannelAffinePass
from qcompiler.passes.fold_constants import FoldConstantsPass
from qcompiler.passes.fuse_attention_mask import FuseAttentionMaskPass
from qcompiler.passes.fuse_gelu import FuseGeluPass
from qcompiler.passes.fuse_l2_normalization import FuseL2NormalizationPass
from qcompiler.passes.fuse_layer_norm import FuseLayerNormPass
from qcompiler.passes.gemm_to_matmul import GemmToMatMulPass
from qcompiler.passes.initializers_as_constants import InitializersAsConstantsPass
from qcompiler.passes.insert_qdq import InsertQDQPass
from qcompiler.passes.integerize_activation_matmul import IntegerizeActivationMatMulPass
from qcompiler.passes.integerize_add import IntegerizeAddPass
from qcompiler.passes.integerize_concat import IntegerizeConcatPass
from qcompiler.passes.integerize_conv import IntegerizeConvPass
from qcompiler.passes.integerize_data_movement import IntegerizeDataMovementPass
from qcompiler.passes.integerize_embedding import IntegerizeEmbeddingPass
from qcompiler.passes.integerize_gelu import IntegerizeGeluPass
from qcompiler.passes.integerize_l2_normalization import IntegerizeL2NormalizationPass
from qcompiler.passes.integerize_layer_norm import IntegerizeLayerNormPass
from qcompiler.passes.integerize_log_attention import IntegerizeLogAttentionPass
from qcompiler.passes.integerize_lookup_table import IntegerizeLookupTablePass
from qcompiler.passes.integerize_masked_mean import IntegerizeMaskedMeanPass
from qcompiler.passes.integerize_matmul import IntegerizeMatMulPass
from qcompiler.passes.integerize_mul import IntegerizeMulPass
from qcompiler.passes.integerize_pooling import IntegerizePoolingPass
from qcompiler.passes.integerize_softmax import IntegerizeSoftmaxPass
from qcompiler.passes.name_nodes import NameNodesPass
from qcompiler.passes.quantize_weights import QuantizeWeightsPass
from qcompiler.passes.remove_identity_ops import RemoveIdentityOpsPass
from qcompiler.passes.remove_unused import RemoveUnusedPass
from qcompiler.passes.set_static_shapes import SetStaticShapesPass
from qcompiler.quant_plan import QParams

__all__ = ["normalize_pipeline", "quantize_pipeline", "integerize_pipeline"]


def normalize_pipeline(input_shapes: dict[str, tuple[int, ...]]) -> Pipeline:
    """Float model -> canonical float model with static shapes, ready for calibration."""
    return Pipeline(
        [
            NameNodesPass(),  # every node named: errors and report.json refer to nodes by name
            InitializersAsConstantsPass(),  # weights listed as graph inputs (IR < 4) are constants
            SetStaticShapesPass(input_shapes),  # static input shapes first: folding shape subgraphs needs them
            FoldConstantsPass(),  # Constant nodes, ConstantOfShape weights, Pad/Reshape shape subgraphs
            RemoveIdentityOpsPass(),  # Identity, inference Dropout
            FuseAttentionMaskPass(),  # Softmax(x + 0/min mask bias) -> Softmax(Where(keep, x, min)), no float mask
            FuseLayerNormPass(),  # decomposed LayerNorm (opset < 17 exports) -> LayerNormalization(axis=-1)
            FuseL2NormalizationPass(),  # x / max(ReduceL2(x), eps <= 1e-6) (F.normalize) -> LpNormalization(p=2)
            FuseGeluPass(),  # exported Erf / tanh GELU subgraphs -> one opset-20 Gelu
            GemmToMatMulPass(),  # one matmul form for quantization: MatMul(x, W[K,N]) + bias
            FoldBatchNormPass(),  # Conv + BN -> Conv
            BatchNormToAffinePass(),  # the other BNs (after Gemm, pre-activation) -> per-channel Mul + Add
            FoldChannelAffinePass(),  # Conv/MatMul + per-channel Mul/Add by constants -> Conv/MatMul
            ChannelAffineToConvPass(),  # remaining per-channel affine ops -> depthwise 1x1 Conv
            RemoveUnusedPass(),  # weights replaced by the folds above
            SetStaticShapesPass(),  # re-infer shapes of the rewritten graph
        ],
        name="normalize",
    )


def quantize_pipeline(params: dict[str, QParams], weight_bits: int = 8,
                      layer_weight_bits: Mapping[str, int] | None = None, per_channel: bool = True) -> Pipeline:
    """Canonical float model + activation parameters -> QDQ model (fake-quantized, runnable in onnxruntime);
    ``layer_weight_bits`` (node name -> width) overrides ``weight_bits`` per layer."""
    return Pipeline(
        [
            InsertQDQPass(params),  # Q/DQ on every activation point
            QuantizeWeightsPass(weight_bits, layer_weight_bits, per_channel),  # int8 weights, int32 biases (after Q/DQ)
            RemoveUnusedPass(),  # the float weights
        ],
        name="quantize",
    )


def integerize_pipeline(mantissa_bits: int, config: CompileConfig | None = None,
                        samples: Mapping[str, np.ndarray] | None = None) -> Pipeline:
    """QDQ model -> integer-only model. Each pass rewrites one ``DQ -> op -> Q`` family; order is free
    except that the lookup-table pass must see ``x * Sigmoid(x)`` before the Mul pass does.

    ``config`` picks the Softmax / GELU methods and the post-Softmax quantizer; ``samples`` (float inputs of
    Softmax and Gelu nodes keyed by node name) let those passes fit their constants per layer."""
    config = config or CompileConfig()
    log_attention = [] if config.softmax_quant == "uniform" else [
        # Softmax -> Q -> DQ -> MatMul(., V) as one pattern: before the generic Softmax and MatMul passes
        IntegerizeLogAttentionPass(config.softmax_quant, config.attention_bits, config.softmax, samples,
                                   mantissa_bits)
    ]
    return Pipeline(
        [
            *log_attention,
            IntegerizeGeluPass(config.gelu, samples, mantissa_bits),  # shift/poly; "table" only records
            IntegerizeLookupTablePass(),  # elementwise functions, including x*sigmoid(x)
            IntegerizeConvPass(mantissa_bits),
            IntegerizeMatMulPass(mantissa_bits),
            IntegerizeActivationMatMulPass(mantissa_bits),  # Q·Kᵀ, A·V
            IntegerizeAddPass(mantissa_bits),
            IntegerizeMulPass(mantissa_bits),
            IntegerizePoolingPass(mantissa_bits),
            IntegerizeConcatPass(mantissa_bits),
            IntegerizeSoftmaxPass(config.softmax, samples),  # uniform probabilities (and classifier heads)
            IntegerizeLayerNormPass(mantissa_bits),  # last-axis LayerNorm: integer variance, Newton isqrt
            IntegerizeL2NormalizationPass(mantissa_bits),  # LpNormalization(p=2, axis=-1)
            IntegerizeEmbeddingPass(),  # Gather(float table, integer ids) -> Gather(quantized table, ids)
            IntegerizeMaskedMeanPass(mantissa_bits),  # sum(x * mask) / count: one table-indexed Requantize
            IntegerizeDataMovementPass(),
            FinalizeIntegerModelPass(),  # refuse leftovers, attach qc functions, drop dead values
        ],
        name="integerize",
    )
