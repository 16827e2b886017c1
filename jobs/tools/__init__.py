"""Tools around the pipeline: the synthetic feed, the KuaiRand importer, profile-eval, the
HTML report and the demo. They use the steps; no step uses them."""
