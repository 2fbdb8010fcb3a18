"""The testing kit's fixtures for every test of this project."""

pytest_plugins = ["mesh.testing"]
