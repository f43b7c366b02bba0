# Prints image_url(key, pipeline, source) for the tests: python3 sign_cli.py KEY PIPELINE SOURCE
import sys

from sign import image_url

print(image_url(*sys.argv[1:4]))
