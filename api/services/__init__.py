"""What the routes call: each rule of the service written once (ownership, quotas, job
creation, deletion), taking its dependencies as arguments."""
