"""The application-neutral study runner (`curate recipe`): shared stages, then an application's jobs and metrics.

    recipe.py        load_recipe, the shared stages (data, base, reference, run, tasks), run_recipe
    study.py         Study: the recipe and its shared stages, what an application plans from
    applications.py  the StudyApplication protocol and the registry of applications by name
    proxies.py       proxy jobs: train a proxy on a dataset and evaluate it with lm-eval, cached by key
    results.py       result rows with their context; the change against a reference arm
    notes.py         keep_notes: a results file's hand-written notes survive its regeneration
"""
