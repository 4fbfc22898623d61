"""run/slurm"""
