"""Fine-tuning: LoRA adapters for local GGUF models, trained from chat data and served by llama.cpp."""
