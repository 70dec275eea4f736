from inflab.common.messages import TrainRequest
from inflab.common.worker import main
from inflab.trainer.service import SERVICE, STAGE, make_handler

if __name__ == "__main__":
    main(SERVICE, STAGE, TrainRequest, make_handler)
