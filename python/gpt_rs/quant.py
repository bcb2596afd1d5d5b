"""GGML block formats (the quantized tensor types of llama.cpp's GGUF files).

``quant_types()`` lists the formats gpt_rs reads; ``dequantize(data, "q4_k")`` turns whole
blocks into float32 values, bit for bit as the ``gguf`` Python package's reference
(``gguf.quants``); ``quantize(x, "q8_0")`` turns float32 values into blocks: the
round-to-nearest formats (q4_0, q4_1, q5_0, q5_1, q8_0) bit-identical to ``gguf.quants``, the
K formats (q4_k, q5_k, q6_k) by a least-squares search whose error is below llama.cpp's
quantizer's. ``quantize_model(folder, "out.gguf", "q4_k_m")`` writes a Hugging Face folder as
a GGUF file that llama.cpp and gpt_rs load, in one type or llama.cpp's mixes q4_k_m, q5_k_m.
"""

from __future__ import annotations

from ._native import dequantize, quant_types, quantize, quantize_model

__all__ = ["dequantize", "quant_types", "quantize", "quantize_model"]
