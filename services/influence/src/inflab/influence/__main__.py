from inflab.common.messages import InfluenceRequest
from inflab.common.worker import main
from inflab.influence.service import SERVICE, STAGE, make_handler

if __name__ == "__main__":
    main(SERVICE, STAGE, InfluenceRequest, make_handler)
