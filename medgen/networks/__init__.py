"""Networks with ``spatial_dims`` 2 or 3: CycleGAN generators and discriminators, synthesizers."""

from medgen.networks.generators import ResnetGenerator, build_discriminator, build_generator

__all__ = ["ResnetGenerator", "build_discriminator", "build_generator"]
