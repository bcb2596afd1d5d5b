"""Texts for checking gpt_rs against llama.cpp on a real GGUF file: a tokenization corpus,
a passage for teacher-forced logits, and prompts for greedy continuations."""

from __future__ import annotations

TOKENIZE = [
    "",
    " ",
    "Hello, world!",
    "def quicksort(arr):\n    if len(arr) <= 1:\n        return arr\n",
    "    \t\t  mixed   whitespace\n\n\n runs    ",
    "naïve café, Straße, Ærøskøbing, ½ ⅓ ¾",
    "日本語のテキストと中文文本，한국어 텍스트",
    "emoji: 😀🎉👍🏽 and a ZWJ family 👨‍👩‍👧‍👦",
    "numbers 1234567890 3.14159 -42 1e-9 0x1F",
    "CamelCaseIdentifiers and snake_case_names, i++ && j-- || k <<= 2;",
    "<|im_start|>user\nHi<|im_end|>",
    "'s 't 're 've 'm 'll 'd 'S 'T",
    "\u00a0non-breaking\u2009thin\u3000ideographic spaces",
    "x" * 200,
    "SELECT * FROM users WHERE id = 42; -- comment\n/* block */",
]

PASSAGE = '''import heapq
from typing import List, Optional


class ListNode:
    def __init__(self, val: int = 0, next: "Optional[ListNode]" = None):
        self.val = val
        self.next = next


def merge_k_lists(lists: List[Optional[ListNode]]) -> Optional[ListNode]:
    """Merges k sorted linked lists into one sorted list, using a heap of the heads."""
    heap = []
    for i, node in enumerate(lists):
        if node:
            heapq.heappush(heap, (node.val, i, node))
    dummy = tail = ListNode()
    while heap:
        val, i, node = heapq.heappop(heap)
        tail.next = node
        tail = node
        if node.next:
            heapq.heappush(heap, (node.next.val, i, node.next))
    return dummy.next


def binary_search(items: List[int], target: int) -> int:
    lo, hi = 0, len(items) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1


if __name__ == "__main__":
    print(binary_search([1, 3, 5, 7, 9, 11], 7))
'''

PROMPTS = [
    "def quicksort(arr):",
    "# Python function that checks whether a number is prime\ndef is_prime(n):",
    "The capital of France is",
    "function fibonacci(n) {",
    "SELECT name, COUNT(*) FROM orders",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
]
GREEDY_NEW = 24
TOP_K = 128  # logits kept per position in the fixture
