"""Model serving: the Open Inference Protocol (V2) model server, its runtimes, adaptive
batching and metrics (:mod:`.server`), the canary/shadow traffic router (:mod:`.router`)
and the local deployment backend (:mod:`.local`). The Kubernetes renderer lives in
:mod:`.kubernetes` (another module's work).

Nothing here is imported by ``import pai_lab``; torch is imported only when a TorchScript
model is loaded.
"""
