import sys

from edge_agent.agent import build
from edge_agent.config import AgentConfig
from mesh import service_main

sys.exit(service_main("agent", AgentConfig, build, module="edge_agent"))
