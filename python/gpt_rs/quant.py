"""GGML block formats (the quantized tensor types of llama.cpp's GGUF files).

``quant_types()`` lists the formats gpt_rs reads; ``dequantize(data, "q4_k")`` turns whole
blocks into float32 values; ``quantize(x, "q8_0")`` turns float32 values into blocks (the
round-to-nearest formats: q4_0, q4_1, q5_0, q5_1, q8_0). Both match the ``gguf`` Python
package's reference (``gguf.quants``) bit for bit. ``quantize_model(folder, "out.gguf",
"q8_0")`` writes a Hugging Face folder as a GGUF file that llama.cpp and gpt_rs load.
"""

from __future__ import annotations

from ._native import dequantize, quant_types, quantize, quantize_model

__all__ = ["dequantize", "quant_types", "quantize", "quantize_model"]
