from mesh.cli.main import cli

cli()
