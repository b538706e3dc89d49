"""The taskraft Kubernetes operator will live here.

It reconciles ``QueueCluster`` resources into running taskraft clusters.
"""
