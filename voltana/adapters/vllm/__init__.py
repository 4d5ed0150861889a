"""voltana.adapters.vllm."""
