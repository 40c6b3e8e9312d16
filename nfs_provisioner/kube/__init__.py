"""The only package that talks to Kubernetes.

``kube.client`` loads a kubeconfig (or the in-cluster service account) with
the ``kubernetes`` library, then speaks JSON over one pool of kept-alive
connections (``kube.transport``) with a client-side token bucket (QPS/burst). Everything above this layer
works on plain ``dict`` objects exactly as the API server serialises them; the
generated client models are never used on the hot path because they are slow
to (de)serialise. ``kube.errors`` turns HTTP failures into typed exceptions. ``kube.objects`` names
those dicts (``Object``) and holds the annotation keys the package shares, once.
"""
