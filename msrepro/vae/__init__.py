"""KL-VAE first stage for latent diffusion (placeholder)."""
