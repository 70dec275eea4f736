from inflab.core.messages import TrainRequest, ValidationRequest
from inflab.core.worker import main
from inflab.trainer import validation_service
from inflab.trainer.service import SERVICE, STAGE, make_handler

if __name__ == "__main__":
    main(SERVICE, STAGE, TrainRequest, make_handler,
         follow_ups=((validation_service.STAGE, ValidationRequest, validation_service.make_handler),))
