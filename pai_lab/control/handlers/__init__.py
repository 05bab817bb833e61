"""REST handlers of the control plane, one module per resource."""
