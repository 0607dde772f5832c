"""prism.wrapper"""
