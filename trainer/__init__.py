"""diffar.trainer: the AR and masked-diffusion trainer."""
