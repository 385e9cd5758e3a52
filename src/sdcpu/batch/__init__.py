"""`sdcpu batch`: a list of prompts, one image each, resumable (prompts.py reads the list, records.py keeps
what is done, local.py runs it in this process, on_ray.py on a Ray cluster)."""
