"""run/mpi"""
