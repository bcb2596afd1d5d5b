"""Basic gpt_rs usage: backends, tensors, functional ops and NumPy interop."""

import numpy as np

import gpt_rs

print("available backends:", gpt_rs.list_backends())
gpt_rs.set_backend("cpu")
print("current backend:", gpt_rs.get_backend())

# Tensors from NumPy (copied by default) and back (numpy() is a zero-copy view).
x = gpt_rs.Tensor.from_numpy(np.array([[1.0, -2.0, 3.0], [0.5, 0.0, -1.5]], dtype=np.float32))
print(x)
print("shape:", x.shape, "dtype:", x.dtype, "backend:", x.backend)

F = gpt_rs.functional
print("softmax:\n", F.softmax_last_dim(x).numpy())
print("gelu:\n", F.gelu(x).numpy())
print("gelu_tanh (GPT-2):\n", F.gelu_tanh(x).numpy())

weight = gpt_rs.Tensor.from_numpy(np.ones(3, dtype=np.float32))
bias = gpt_rs.Tensor.from_numpy(np.zeros(3, dtype=np.float32))
print("layer_norm:\n", F.layer_norm(x, weight, bias, eps=1e-5).numpy())

w = gpt_rs.Tensor.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4) / 10)
print("matmul:\n", F.matmul(x, w).numpy())
print("operators: (x @ w + 1) * 2 =\n", ((x @ w + 1) * 2).numpy())

table = gpt_rs.Tensor.from_numpy(np.arange(20, dtype=np.float32).reshape(5, 4))
print("embedding_lookup([0, 3, 1]):\n", F.embedding_lookup(table, np.array([0, 3, 1])).numpy())

# Zero-copy: share memory with NumPy in both directions.
a = np.zeros((2, 2), dtype=np.float32)
shared = gpt_rs.Tensor.from_numpy(a, copy=False)
a[0, 0] = 7.0
print("shared tensor sees NumPy's write:", shared.numpy()[0, 0])
print("np.shares_memory(t.numpy(), t.numpy()):", np.shares_memory(x.numpy(), x.numpy()))
print("DLPack round trip shares memory:", np.shares_memory(np.from_dlpack(shared), a))
