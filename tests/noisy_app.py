"""The bundled app, through a module that prints when imported: a rebuild worker's results must survive it."""

from pm.app import load_app

print("noisy_app: imported")  # on stdout, where a rebuild worker hands its results back

app = load_app()
