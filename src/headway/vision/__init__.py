"""Image-classification data and a compact training / fine-tuning loop."""
