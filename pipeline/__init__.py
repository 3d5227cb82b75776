"""synthfaces: synthetic face-recognition datasets from StyleGAN generators."""

__version__ = "0.1.0"
